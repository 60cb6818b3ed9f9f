package config

// Session limits per mailbox, the defaults of max_sessions: Gmail allows
// 15 simultaneous IMAP connections per account (support.google.com/mail/
// answer/97150; imapsync/imapsync#61); Exchange Online starts refusing at
// 16 to 20 (imapsync/imapsync#212, mscdex/node-imap#523), so 16.
const (
	googleMaxSessions    = 15
	microsoftMaxSessions = 16
)

// microsoftClouds are the sign-in host and the Exchange Online host of each
// Microsoft cloud (key cloud): the global one, US Government GCC High and
// DoD (mguessan/davmail#284; learn.microsoft.com national clouds), and the
// China cloud operated by 21Vianet (mguessan/davmail#341).
var microsoftClouds = map[string]struct{ login, exchange, smtp string }{
	"global": {"login.microsoftonline.com", "outlook.office365.com", "smtp.office365.com"},
	"usgov":  {"login.microsoftonline.us", "outlook.office365.us", "smtp.office365.us"},
	"china":  {"login.chinacloudapi.cn", "partner.outlook.cn", "smtp.partner.outlook.cn"},
}

// preset returns the Provider values for a provider type, before the file's
// keys are applied. tenant and cloud fill the Microsoft endpoint URLs,
// scopes and IMAP host. An empty or unknown type (generic) has no
// endpoints, scopes or address.
func preset(typ, tenant, cloud string) Provider {
	p := Provider{IMAPTLS: "implicit", Mechanism: "XOAUTH2"}
	switch typ {
	case "microsoft":
		hosts, ok := microsoftClouds[cloud]
		if !ok {
			hosts = microsoftClouds["global"]
		}
		// https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow
		base := "https://" + hosts.login + "/" + tenant + "/oauth2/v2.0/"
		p.AuthURL = base + "authorize"
		p.TokenURL = base + "token"
		p.DeviceAuthURL = base + "devicecode"
		p.Scopes = []string{"https://" + hosts.exchange + "/IMAP.AccessAsUser.All", "offline_access"}
		p.AppScopes = []string{"https://" + hosts.exchange + "/.default"}
		p.IMAPAddress = hosts.exchange + ":993"
		p.MaxSessions = microsoftMaxSessions
		// https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/pop3-and-imap4/pop3-and-imap4
		p.POP3Address = hosts.exchange + ":995"
		// https://learn.microsoft.com/exchange/mail-flow-best-practices/how-to-set-up-a-multifunction-device-or-application-to-send-email-using-microsoft-365-or-office-365
		p.SMTPAddress = hosts.smtp + ":587"
	case "google":
		p.AuthURL = "https://accounts.google.com/o/oauth2/auth"
		p.TokenURL = "https://oauth2.googleapis.com/token"
		p.DeviceAuthURL = "https://oauth2.googleapis.com/device/code"
		p.Scopes = []string{"https://mail.google.com/"}
		p.IMAPAddress = "imap.gmail.com:993"
		p.MaxSessions = googleMaxSessions
		// https://developers.google.com/gmail/imap/xoauth2-protocol: POP
		// AUTH takes the initial response on the command line.
		p.POP3Address = "pop.gmail.com:995"
		p.POP3InitialResponse = true
		// https://developers.google.com/gmail/imap/imap-smtp: submission
		// with STARTTLS on 587.
		p.SMTPAddress = "smtp.gmail.com:587"
	}
	return p
}
