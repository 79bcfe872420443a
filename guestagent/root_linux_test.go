package guestagent

import (
	"testing"

	"golang.org/x/sys/unix"
)

// The mount flags that root.go repeats for other systems are Linux's.
func TestMountFlagsAreLinux(t *testing.T) {
	for name, c := range map[string][2]uintptr{
		"MS_RDONLY":      {msRdonly, unix.MS_RDONLY},
		"MS_NOSUID":      {msNosuid, unix.MS_NOSUID},
		"MS_NODEV":       {msNodev, unix.MS_NODEV},
		"MS_NOEXEC":      {msNoexec, unix.MS_NOEXEC},
		"MS_SYNCHRONOUS": {msSynchronous, unix.MS_SYNCHRONOUS},
		"MS_DIRSYNC":     {msDirsync, unix.MS_DIRSYNC},
		"MS_NOATIME":     {msNoatime, unix.MS_NOATIME},
		"MS_NODIRATIME":  {msNodiratime, unix.MS_NODIRATIME},
		"MS_RELATIME":    {msRelatime, unix.MS_RELATIME},
		"MS_STRICTATIME": {msStrictatime, unix.MS_STRICTATIME},
		"MS_LAZYTIME":    {msLazytime, unix.MS_LAZYTIME},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x here, %#x in Linux", name, c[0], c[1])
		}
	}
}
