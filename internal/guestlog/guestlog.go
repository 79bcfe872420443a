// Package guestlog bounds what a guest can make the host write. A guest
// controls how much it prints and how often it misbehaves, so neither may
// decide how much host disk the VMM uses:
//
//   - CappedFile is the console log: a file that rotates to one backup
//     when it reaches its cap, so the pair never holds much more than
//     twice the cap, and that never fails the guest's write.
//   - CapOutput caps a process's own log, its stderr pointed at a file
//     (sailbox-vmm's vmm.log, sailbox-net's net.log), rotating in place
//     so that the descriptor stays the log.
//   - Limiter rate-limits log records a guest can cause at will (a
//     device's warnings about malformed requests): a few per interval
//     pass, the rest are counted and reported when records pass again.
package guestlog
