// Package auth turns a collector's local login and password into an
// access token for the upstream mailbox.
//
// A Manager (manager.go) opens the account's token record from the
// tokenstore package with the local password, keeps one token source per
// account so that concurrent logins share one refresh, and saves a rotated
// refresh token before it hands out the access token that came with it.
// The grants (grants.go, grants_assertion.go) run an authorization (code
// with PKCE, device code), whose refresh token the commands then store,
// and build the app-only token sources (client secret, certificate,
// Google service account). errors.go and grants_errors.go say what a failure
// means for the collector (an RFC 5530 response code) and for the
// operator. xoauth2.go is the XOAUTH2 SASL client.
package auth
