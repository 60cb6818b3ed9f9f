package auth

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/oauth2"

	"github.com/imap-oauth-proxy/imap-oauth-proxy/config"
)

// tokenFailure is what a token endpoint said when it refused a request.
type tokenFailure struct {
	code   string // OAuth error code: invalid_grant, invalid_client, ...
	desc   string // first line of error_description, without "AADSTSn: "
	aadsts int    // Entra ID's AADSTS code, 0 if none
	status int    // HTTP status, 0 if unknown
}

var aadstsRE = regexp.MustCompile(`AADSTS(\d+)`)

// decodeTokenFailure reads re. x/oauth2's JWT grant fills only Body, so the
// JSON error body is decoded here when ErrorCode is empty; Entra ID's
// error_codes array gives the AADSTS code.
func decodeTokenFailure(re *oauth2.RetrieveError) tokenFailure {
	f := tokenFailure{code: re.ErrorCode, desc: re.ErrorDescription}
	if re.Response != nil {
		f.status = re.Response.StatusCode
	}
	var body struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
		ErrorCodes       []int  `json:"error_codes"`
	}
	if len(re.Body) > 0 && json.Unmarshal(re.Body, &body) == nil {
		if f.code == "" {
			f.code, f.desc = body.Error, body.ErrorDescription
		}
		if len(body.ErrorCodes) > 0 {
			f.aadsts = body.ErrorCodes[0]
		}
	}
	if m := aadstsRE.FindStringSubmatch(f.desc); m != nil && f.aadsts == 0 {
		f.aadsts, _ = strconv.Atoi(m[1])
	}
	f.desc = firstLine(f.desc)
	if f.aadsts != 0 {
		f.desc = strings.TrimPrefix(f.desc, "AADSTS"+strconv.Itoa(f.aadsts)+": ")
	}
	return f
}

// reason is the provider's own words, short: "invalid_grant, AADSTS50173"
// or, for a code the advice table does not know, with the description.
func (f tokenFailure) reason() string {
	r := f.code
	if r == "" {
		r = "no error code"
	}
	if f.aadsts != 0 {
		r += ", AADSTS" + strconv.Itoa(f.aadsts)
	}
	if f.desc != "" && !f.known() {
		r += ": " + OneLine(f.desc, 160)
	}
	return r
}

// known reports whether the advice table explains f, so that the
// provider's long description can be left out of the message.
func (f tokenFailure) known() bool {
	if f.aadsts != 0 {
		_, ok := aadstsAdvice[f.aadsts]
		return ok
	}
	_, ok := googleAdvice(f, config.GrantRefreshToken)
	return ok
}

// advice explains a refusal to the operator.
type advice struct {
	// what happened, in the operator's words.
	what string
	// fix says what to do. {login}, {provider}, {tenant} and {client_id}
	// are replaced (see fixText).
	fix string
}

const runAuthorize = "run: imap-oauth-proxy authorize {login}"

// aadstsAdvice maps Entra ID's AADSTS codes to advice. The codes are
// documented at https://learn.microsoft.com/entra/identity-platform/reference-error-codes
// (and https://login.microsoftonline.com/error?code=N).
var aadstsAdvice = map[int]advice{
	// The stored grant is dead: authorize again.
	50173:  {"authorization revoked (password changed or reset, or sessions revoked by an admin)", runAuthorize},
	70000:  {"authorization invalid or revoked", runAuthorize},
	70008:  {"authorization expired after a long time unused", runAuthorize},
	700082: {"authorization expired after a long time unused", runAuthorize},
	50132:  {"authorization ended by a password change or expiry", runAuthorize},
	70043:  {"authorization ended by a Conditional Access sign-in frequency policy", runAuthorize},
	54005:  {"the authorization code was already used", runAuthorize},
	50076:  {"multi-factor authentication is now required", runAuthorize + " and complete the MFA prompt"},
	50079:  {"multi-factor authentication registration is required", runAuthorize + " and complete the MFA prompt"},
	50078:  {"the multi-factor authentication has expired", runAuthorize + " and complete the MFA prompt"},
	50055:  {"the user's password has expired", "change the password, then " + runAuthorize},
	50057:  {"the user account is disabled", "enable the account in Entra ID, or " + runAuthorize + " with another account"},
	50053:  {"the account is locked after too many failed sign-ins", "wait for the lockout to end, then " + runAuthorize},
	50034:  {"the user account does not exist in the tenant", "check providers.{provider}.tenant, then " + runAuthorize + " with an account of that tenant"},
	65004:  {"the user declined the consent prompt", runAuthorize + " and accept the permissions"},

	// The app registration or the tenant.
	65001:   {"admin consent missing", "grant admin consent for the app in Entra ID (App registrations > API permissions > Grant admin consent), then {after_consent}"},
	7000215: {"client secret is wrong", "set providers.{provider}.client_secret to the secret's Value (not its Secret ID) from Entra ID > App registrations > Certificates & secrets"},
	7000222: {"client secret has expired", "create a new client secret in Entra ID (App registrations > Certificates & secrets) and set providers.{provider}.client_secret"},
	7000218: {"the app requires a client secret or certificate", "set providers.{provider}.client_secret (or client_certificate_file and client_key_file), " +
		"or set Allow public client flows to Yes in Entra ID (App registrations > Authentication)"},
	700025:  {"the app is a public client and must not send a client secret", "remove client_secret from providers.{provider}"},
	700016:  {"app {client_id} not found in the tenant", "check providers.{provider}.client_id and tenant ({tenant}), and that an admin consented to the app in that tenant"},
	90002:   {"tenant {tenant} not found", "set providers.{provider}.tenant to the tenant ID or its onmicrosoft.com domain"},
	50194:   {"the app is single-tenant", "set providers.{provider}.tenant to the tenant ID or domain instead of {tenant}"},
	7000112: {"the app is disabled", "enable the app in Entra ID (Enterprise applications > Properties > Enabled for users to sign-in)"},
	500011:  {"Exchange Online is not available in the tenant", "check providers.{provider}.tenant, and that the tenant has Exchange Online"},
	53003:   {"blocked by a Conditional Access policy", "exclude the app (or this host's location) from the policy; Entra ID sign-in logs name the policy"},
	53000:   {"a Conditional Access policy requires a managed device", "exclude the app from the policy in Entra ID"},
	50011:   {"the redirect URI is not registered for the app", "add the platform Mobile and desktop applications with redirect URI http://127.0.0.1 in Entra ID (App registrations > Authentication, or redirectUris in the manifest)"},
	1002012: {"the app-only scope is invalid", "set providers.{provider}.app_scopes = [\"https://outlook.office365.com/.default\"]"},
	70011:   {"the requested scope is invalid", "check providers.{provider}.scopes (Microsoft 365: https://outlook.office365.com/IMAP.AccessAsUser.All offline_access)"},
	700024:  {"the client assertion is outside its valid time range", "synchronize this host's clock (NTP)"},

	// Certificate credentials (client_certificate_file): the client
	// assertion the proxy signs for each client_credentials request.
	700027: {"Entra ID does not accept the app's certificate: it is not uploaded to the app, it has expired there, or the key does not match it",
		"upload providers.{provider}.client_certificate_file in Entra ID (App registrations > Certificates & secrets > Certificates) " +
			"and check that client_key_file is its key, then run: imap-oauth-proxy check {login}"},
	700021: {"the client assertion names another app than client_id", "check providers.{provider}.client_id against the app's Application (client) ID"},
	700023: {"the client assertion's audience is not the tenant's token endpoint", "check providers.{provider}.tenant ({tenant}) and token_url"},
	50027:  {"the client assertion is malformed", "check providers.{provider}.client_certificate_file and client_key_file, then run: imap-oauth-proxy check {login}"},
	50013:  {"the client assertion was refused as invalid (replayed, expired or malformed)", "synchronize this host's clock (NTP), then run: imap-oauth-proxy check {login}"},
}

// adviceFor finds advice for f: Entra ID's AADSTS code first, then
// Google's error codes.
func adviceFor(f tokenFailure, p *config.Provider, grant config.Grant) (advice, bool) {
	if f.aadsts != 0 {
		adv, ok := aadstsAdvice[f.aadsts]
		if ok && grant.AppOnly() {
			// An app-only grant has nothing to authorize again.
			if strings.HasPrefix(adv.fix, runAuthorize) {
				adv.fix = "check the app registration in Entra ID, then run: imap-oauth-proxy check {login}"
			}
			adv.fix = strings.ReplaceAll(adv.fix, "{after_consent}", "run: imap-oauth-proxy check {login}")
		}
		return adv, ok
	}
	if p != nil && p.Type == "google" {
		return googleAdvice(f, grant)
	}
	return advice{}, false
}

// googleAdvice explains Google's token endpoint errors. Google's codes are
// plain OAuth codes with a short description, and the service account
// (JWT bearer) grant gives them other meanings.
func googleAdvice(f tokenFailure, grant config.Grant) (advice, bool) {
	has := func(s string) bool { return strings.Contains(f.desc, s) }
	switch f.code {
	case "invalid_grant":
		switch {
		case grant == config.GrantServiceAccount && has("Invalid JWT Signature"):
			return advice{"the service account key was deleted or does not belong to the service account",
				"create a new JSON key (Google Cloud console > IAM & Admin > Service accounts > Keys) and set providers.{provider}.service_account_file"}, true
		case grant == config.GrantServiceAccount && has("Invalid email or User ID"):
			return advice{"the mailbox is not a user of the Workspace domain", "check accounts.{login}.mailbox"}, true
		case has("short-lived token") || has("reasonable timeframe"):
			return advice{"this host's clock is off", "synchronize the clock (NTP)"}, true
		case grant == config.GrantServiceAccount && has("account not found"):
			return advice{"the service account does not exist any more", "create a service account and key, and set providers.{provider}.service_account_file"}, true
		case grant == config.GrantServiceAccount:
			return advice{}, false
		case has("expired or revoked"):
			return advice{"authorization expired or revoked (revoked by the user or an admin, password changed, or the OAuth consent screen is in Testing, whose tokens last 7 days)",
				runAuthorize}, true
		}
	case "unauthorized_client":
		if grant == config.GrantServiceAccount {
			return advice{"domain-wide delegation is missing for the service account and scope https://mail.google.com/",
				"in the Google Admin console, Security > Access and data control > API controls > Manage Domain Wide Delegation, add the service account's client ID with scope https://mail.google.com/"}, true
		}
		return advice{"the authorization belongs to another OAuth client", runAuthorize + " with providers.{provider}.client_id"}, true
	case "invalid_client":
		return advice{"client_id or client_secret is wrong, or the OAuth client was deleted",
			"check providers.{provider}.client_id and client_secret against Google Cloud console > APIs & Services > Credentials"}, true
	case "admin_policy_enforced":
		return advice{"a Google Workspace admin policy blocks the app",
			"mark the OAuth client as Trusted in the Admin console (Security > Access and data control > API controls > Manage Third-Party App Access)"}, true
	case "disabled_client":
		return advice{"the OAuth client is disabled", "enable it in Google Cloud console > APIs & Services > Credentials"}, true
	case "org_internal":
		return advice{"the app is limited to users of its organization", "sign in with an account of the Workspace organization, or make the consent screen External"}, true
	case "access_denied":
		return advice{"the sign-in was declined", runAuthorize + " and allow access"}, true
	}
	return advice{}, false
}

// fixText fills the placeholders of an advice's fix.
func fixText(fix, login string, p *config.Provider) string {
	after := "run: imap-oauth-proxy authorize " + login
	if p == nil {
		p = &config.Provider{}
	}
	tenant := p.Tenant
	if tenant == "" {
		tenant = "(none)"
	}
	r := strings.NewReplacer(
		"{login}", login,
		"{provider}", p.Name,
		"{tenant}", tenant,
		"{client_id}", p.ClientID,
		"{after_consent}", after,
	)
	return r.Replace(fix)
}

// AuthorizeError is an error answer of the authorization endpoint, which
// the browser brings back to the redirect URI (RFC 6749 section 4.1.2.1).
type AuthorizeError struct {
	Code        string // access_denied, consent_required, ...
	Description string
}

// Error returns the code and the description's first line.
func (e *AuthorizeError) Error() string {
	msg := "authorization refused: " + e.Code
	if d := firstLine(e.Description); d != "" {
		msg += ": " + OneLine(d, 300)
	}
	if e.Code == "access_denied" {
		msg += " (the sign-in was declined or cancelled)"
	}
	if strings.Contains(e.Description, "AADSTS65001") || e.Code == "consent_required" {
		msg += " (an admin must grant consent: Entra ID > App registrations > API permissions > Grant admin consent)"
	}
	return msg
}

// RefusalAdvice lists, for an operator, the usual reasons why acct's
// provider's IMAP server refuses a token its token endpoint just issued.
func RefusalAdvice(acct *config.Account) string {
	m, p := acct.Mailbox, acct.Provider
	switch {
	case p.Type == "microsoft" && acct.Grant == config.GrantClientCredentials:
		return fmt.Sprintf("Microsoft 365 refuses app-only tokens when the app lacks the IMAP.AccessAsApp permission with admin consent, "+
			"when its service principal is not registered in Exchange Online (New-ServicePrincipal -AppId %s -ObjectId <Enterprise application Object ID>), "+
			"when it has no access to the mailbox (Add-MailboxPermission -Identity %s -User <Enterprise application Object ID> -AccessRights FullAccess), "+
			"or when IMAP is disabled for the mailbox (Set-CASMailbox -Identity %s -ImapEnabled $true)", p.ClientID, m, m)
	case p.Type == "microsoft":
		return fmt.Sprintf("Microsoft 365 answers this when IMAP is disabled for the mailbox (Set-CASMailbox -Identity %s -ImapEnabled $true), "+
			"when the mailbox has no Exchange Online license, or when the account that authorized is not %s and has no Full Access to it "+
			"(Add-MailboxPermission -Identity %s -User <that account> -AccessRights FullAccess); then wait up to an hour for Exchange to apply it", m, m, m)
	case p.Type == "google" && acct.Grant == config.GrantServiceAccount:
		return fmt.Sprintf("Gmail refuses when IMAP access is off for %s (Admin console > Apps > Google Workspace > Gmail > End User Access) "+
			"or when the domain-wide delegation does not cover https://mail.google.com/", m)
	case p.Type == "google":
		return fmt.Sprintf("Gmail refuses when %s is not the Google account that authorized (run authorize again signed in as %s), "+
			"or when IMAP access is off for it (Admin console > Apps > Google Workspace > Gmail > End User Access)", m, m)
	}
	return fmt.Sprintf("check accounts.%s.mailbox and that provider %s's scopes allow IMAP", acct.Login, p.Name)
}
