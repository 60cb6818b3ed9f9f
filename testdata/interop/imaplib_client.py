"""A legacy collector written with Python's imaplib, run by
proxy/interop_test.go through the proxy.

Usage: python3 imaplib_client.py HOST PORT USER < password
The password is the first line of stdin, never an argument. Prints one JSON
object: what the client saw before and after it changed the mailbox.
  ID ("name" "imaplib-interop") before login, LOGIN, SELECT INBOX, UID FETCH 1:* (UID FLAGS BODY.PEEK[]),
  STORE 1 +FLAGS (\\Seen), STORE 2 +FLAGS (\\Deleted), EXPUNGE,
  UID FETCH 1:* (UID FLAGS), LOGOUT.
"""

import hashlib
import imaplib
import json
import re
import sys


def check(what, typ, data):
    if typ != "OK":
        raise SystemExit("%s: %s %r" % (what, typ, data))
    return data


def messages(m, items):
    """Parses UID FETCH results into [{uid, flags[, sha256, subject]}]."""
    data = check("UID FETCH", *m.uid("FETCH", "1:*", items))
    # imaplib returns a (meta, literal) tuple per literal, then the rest of
    # the response line as bytes; a response without literals is bytes.
    responses = []
    for part in data:
        if part is None:
            continue
        if isinstance(part, tuple):
            responses.append([part[0], part[1]])
        elif responses and responses[-1][1] is not None and not re.match(rb"\d+ \(", part):
            responses[-1][0] += part
        else:
            responses.append([part, None])
    out = []
    for meta, body in responses:
        uid = int(re.search(rb"UID (\d+)", meta).group(1))
        flags = re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split()
        msg = {"uid": uid, "flags": sorted(f for f in flags if f != "\\Recent")}
        if body is not None:
            msg["sha256"] = hashlib.sha256(body).hexdigest()
            subject = re.search(rb"(?im)^Subject: (.*?)\r?$", body)
            msg["subject"] = subject.group(1).decode() if subject else ""
        out.append(msg)
    return out


def main():
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    password = sys.stdin.readline().rstrip("\r\n")
    m = imaplib.IMAP4(host, port)
    result = {"greeting": m.welcome.decode(errors="replace")}
    typ, data = m.xatom("ID", '("name" "imaplib-interop")')
    check("ID", typ, data)
    result["id"] = [d.decode(errors="replace") for d in m.response("ID")[1] if d is not None]
    check("LOGIN", *m.login(user, password))
    result["capabilities"] = list(m.capabilities)
    # The capabilities in the OK to LOGIN, which imaplib files as an
    # untagged CAPABILITY response.
    caps = [d for d in m.response("CAPABILITY")[1] if d is not None]
    result["login_capabilities"] = caps[-1].decode().split() if caps else []
    exists = check("SELECT", *m.select("INBOX"))
    result["exists"] = int(exists[0])
    result["before"] = messages(m, "(UID FLAGS BODY.PEEK[])")
    check("STORE \\Seen", *m.store("1", "+FLAGS", "(\\Seen)"))
    check("STORE \\Deleted", *m.store("2", "+FLAGS", "(\\Deleted)"))
    expunged = check("EXPUNGE", *m.expunge())
    result["expunged"] = [int(x) for x in expunged if x is not None]
    result["after"] = messages(m, "(UID FLAGS)")
    m.close()
    m.logout()
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
