// Command sailbox-vmm boots and runs one Sailbox microVM on /dev/kvm.
//
//	sailbox-vmm -kernel bzImage -initrd initramfs.cpio -mem 256 -cpus 1
//	sailbox-vmm -config vm.json
//	sailbox-vmm -kernel bzImage -initrd initramfs.cpio -store DIR -disks-from CHECKPOINT
//
// It exits 0 when the guest powers off or reboots, or when it is told to
// shut down; non-zero with a message naming the problem otherwise.
package main

import "github.com/sailbox-dev/sailbox/internal/cli"

func main() { cli.Main("sailbox-vmm", run) }
