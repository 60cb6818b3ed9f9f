package config

// DefaultSMTPMaxMessageBytes is the default of smtp_max_message_bytes:
// 35 MiB, about what Microsoft 365 (35 MB) and Gmail (SIZE 35882577)
// accept.
const DefaultSMTPMaxMessageBytes = 35 << 20

// smtpServer reads a provider's SMTP keys into pr.
func (p *parser) smtpServer(r *rawProvider, pr *Provider, at func(string) string) {
	setIf(&pr.SMTPAddress, r.SMTPAddress)
	if pr.SMTPAddress != "" {
		p.address(pr.SMTPAddress, false, at("smtp_address"))
	}
}
