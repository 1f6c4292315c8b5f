# Config group 'experiment'.
