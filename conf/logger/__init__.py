# Config group 'logger'.
