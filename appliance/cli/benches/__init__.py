"""One module per ``appliance bench`` benchmark: its arguments and its report."""
