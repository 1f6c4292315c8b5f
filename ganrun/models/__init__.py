"""Network families, one module each; configs name the classes with `_target_`."""
