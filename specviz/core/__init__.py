"""The core: settings, events, sampling, acceptance rules, the proposer interface and model protocol, the loop, metrics and theory; it imports no other layer."""
