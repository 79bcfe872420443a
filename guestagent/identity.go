package guestagent

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// What a restored guest is told: a fresh entropy seed and, for a fork, a
// new identity.

// restoredEntropy is how many bytes of entropy RestoreArgs sends: 512
// bits, twice a CRNG key.
const restoredEntropy = 64

// RestoreArgs returns the arguments of Restored for a box restored in
// place, which keeps its identity: fresh entropy from the host's
// crypto/rand, and a zero Time, so that Restored sends the host's clock as
// it sends the request.
func RestoreArgs() RestoredArgs {
	return RestoredArgs{Entropy: randomBytes(restoredEntropy)}
}

// ForkArgs returns the arguments of Restored for a box forked from another,
// whose own ID is boxID: those of RestoreArgs, with a new identity, the
// hostname ForkHostname(boxID) and a NewMachineID. A fork must never share
// its parent's random state, hostname or machine ID.
func ForkArgs(boxID string) (RestoredArgs, error) {
	name, err := ForkHostname(boxID)
	if err != nil {
		return RestoredArgs{}, err
	}
	args := RestoreArgs()
	args.Hostname = name
	args.MachineID = NewMachineID()
	return args, nil
}

// maxForkHostname is the longest hostname ForkHostname returns: that of a
// DNS label.
const maxForkHostname = 63

// ForkHostname returns the hostname of the box whose ID is boxID: "sbx-"
// followed by the ID, cut to 63 bytes, the limit of a DNS label, without
// hyphens at the end. It fails for an ID that is empty or holds anything
// but ASCII letters, digits and hyphens.
func ForkHostname(boxID string) (string, error) {
	if boxID == "" {
		return "", errors.New("fork hostname: empty box ID")
	}
	for _, r := range boxID {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
			return "", fmt.Errorf("fork hostname: box ID %q: want only letters, digits and hyphens", truncate(boxID, 80))
		}
	}
	name := "sbx-" + boxID
	name = strings.TrimRight(name[:min(len(name), maxForkHostname)], "-")
	if !validHostname(name) { // cannot fail, given the checks above
		return "", fmt.Errorf("fork hostname: box ID %q makes invalid hostname %q", truncate(boxID, 80), name)
	}
	return name, nil
}

// NewMachineID returns a new random machine ID in the format of
// /etc/machine-id (machine-id(5)): 32 lowercase hexadecimal digits, a
// random (version 4) UUID without hyphens, as systemd makes them.
func NewMachineID() string {
	b := randomBytes(16)
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 1 (RFC 9562)
	return hex.EncodeToString(b)
}

// randomBytes returns n bytes from crypto/rand, which never fails: if the
// host's random source does, the program crashes.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
