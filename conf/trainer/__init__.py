# Config group 'trainer'.
