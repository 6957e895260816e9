"""Keychain server: an encrypted credential and token cache for workflow workers."""
