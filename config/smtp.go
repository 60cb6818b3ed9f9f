package config

// DefaultSMTPMaxMessageBytes is the default of smtp_max_message_bytes:
// 35 MiB, about what Microsoft 365 (35 MB) and Gmail (SIZE 35882577)
// accept.
const DefaultSMTPMaxMessageBytes = 35 << 20
