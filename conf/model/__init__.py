# Config group 'model'.
