"""One module of checks per notebook. A check raises CheckFailed with a message a student can act on."""
