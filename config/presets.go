package config

// preset returns the Provider values for a provider type, before the file's
// keys are applied. tenant fills the Microsoft endpoint URLs. An empty or
// unknown type (generic) has no endpoints, scopes or address.
func preset(typ, tenant string) Provider {
	p := Provider{IMAPTLS: "implicit", Mechanism: "XOAUTH2"}
	switch typ {
	case "microsoft":
		// https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
		base := "https://login.microsoftonline.com/" + tenant + "/oauth2/v2.0/"
		p.AuthURL = base + "authorize"
		p.TokenURL = base + "token"
		p.DeviceAuthURL = base + "devicecode"
		p.Scopes = []string{"https://outlook.office365.com/IMAP.AccessAsUser.All", "offline_access"}
		p.AppScopes = []string{"https://outlook.office365.com/.default"}
		p.IMAPAddress = "outlook.office365.com:993"
		// https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/pop3-and-imap4/pop3-and-imap4
		p.POP3Address = "outlook.office365.com:995"
	case "google":
		p.AuthURL = "https://accounts.google.com/o/oauth2/auth"
		p.TokenURL = "https://oauth2.googleapis.com/token"
		p.DeviceAuthURL = "https://oauth2.googleapis.com/device/code"
		p.Scopes = []string{"https://mail.google.com/"}
		p.IMAPAddress = "imap.gmail.com:993"
		// https://developers.google.com/gmail/imap/xoauth2-protocol: POP
		// AUTH takes the initial response on the command line.
		p.POP3Address = "pop.gmail.com:995"
		p.POP3InitialResponse = true
	}
	return p
}
