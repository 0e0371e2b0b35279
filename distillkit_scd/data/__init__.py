"""Task rows to training batches: chat-template formatting, collation, and the data checks and fetch."""
