"""Op-level blind remoting: the client runs an unmodified model on a `remote` device whose every op a server runs."""
