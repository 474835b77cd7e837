"""HTTP server: OpenAI-compatible and native routes, web page, metrics, auth and limits (`fast-tts serve`)."""
