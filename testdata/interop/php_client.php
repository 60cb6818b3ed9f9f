<?php
// A legacy collector on PHP's imap extension (UW c-client), the path older
// GLPI versions take, run by proxy/interop_test.go through the proxy.
//
// Usage: php php_client.php HOST PORT USER < password
// The password is the first line of stdin, never an argument. Prints one
// JSON object: imap_num_msg, then for each message its UID, subject
// (imap_headerinfo) and the SHA-256 of header and body (imap_fetchheader,
// imap_body with FT_PEEK); then deletes the first message and expunges, as
// GLPI's collector does with a collected mail.

if ($argc != 4) {
    fwrite(STDERR, "usage: php php_client.php HOST PORT USER < password\n");
    exit(2);
}
[, $host, $port, $user] = $argv;
$password = rtrim(fgets(STDIN), "\r\n");

$mailbox = sprintf('{%s:%d/imap/notls}INBOX', $host, $port);
$m = imap_open($mailbox, $user, $password, 0, 1);
if ($m === false) {
    fwrite(STDERR, "imap_open: " . imap_last_error() . "\n");
    exit(1);
}
$result = ['num_msg' => imap_num_msg($m), 'messages' => []];
for ($i = 1; $i <= $result['num_msg']; $i++) {
    $info = imap_headerinfo($m, $i);
    $raw = imap_fetchheader($m, $i) . imap_body($m, $i, FT_PEEK);
    $result['messages'][] = [
        'uid' => imap_uid($m, $i),
        'subject' => isset($info->subject) ? $info->subject : '',
        'sha256' => hash('sha256', $raw),
    ];
}
if ($result['num_msg'] > 0) {
    imap_delete($m, '1');
    imap_expunge($m);
}
$result['num_msg_after'] = imap_num_msg($m);
imap_close($m);
$errors = imap_errors();
if ($errors !== false) {
    $result['errors'] = $errors;
}
echo json_encode($result), "\n";
