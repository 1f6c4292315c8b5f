# Config group 'dataset'.
