"""Local fake model servers (Anthropic Messages API, OpenAI Chat Completions) and a scripted provider."""
