"""The built-in MCP tool server that turnstream workers use by default (see workers.toolserver.server)."""
