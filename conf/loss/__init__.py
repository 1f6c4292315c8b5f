# Config group 'loss'.
