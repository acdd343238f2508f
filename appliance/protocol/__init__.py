"""Plain data that several floors share: worker pipe messages, requests, outgoing messages."""
