//go:build unix

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// actAsOwnerOf switches a root process to the user and group that own dir.
// It does nothing when the process is not root, when dir does not exist
// yet, or when root owns it. Since Go 1.16 the switch applies to every
// thread of the process.
func actAsOwnerOf(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	info, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking the state directory: %w", err)
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	uid, gid := int(st.Uid), int(st.Gid)
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("dropping supplementary groups: %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("switching to group %d, which owns %s: %w", gid, dir, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("switching to user %d, which owns %s: %w", uid, dir, err)
	}
	return nil
}
