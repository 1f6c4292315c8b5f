# Config group 'optim'.
