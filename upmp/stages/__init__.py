"""The recipe stages as library code; each entry point in upmp.bin parses its options and calls one."""
