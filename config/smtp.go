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

// smtpListeners reads the [server] SMTP keys into s.
func (p *parser) smtpListeners(r *rawServer, s *Server) {
	setIf(&s.ListenSMTP, r.ListenSMTP)
	setIf(&s.ListenSMTPS, r.ListenSMTPS)
	if s.ListenSMTP != "" {
		p.address(s.ListenSMTP, true, "server.listen_smtp")
	}
	if s.ListenSMTPS != "" {
		p.address(s.ListenSMTPS, true, "server.listen_smtps")
		if s.TLSCert == "" && s.TLSKey == "" {
			p.addf("server.listen_smtps", "needs server.tls_cert and server.tls_key")
		}
	}
	p.limit(r.SMTPMaxMessageBytes, &s.SMTPMaxMessageBytes, "server.smtp_max_message_bytes")
}
