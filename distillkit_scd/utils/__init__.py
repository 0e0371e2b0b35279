"""Basics every layer may use: atomic writes, content hashes, logging, progress, Ctrl-C, and the launched processes (DDP/ZeRO-3 unwrap, data-parallel sharding)."""
