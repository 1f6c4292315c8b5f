# Config group 'debug'.
