package vmm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/sailbox-dev/sailbox/devices/virtio"
	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// Queue notifications without a vCPU exit. A virtio driver kicks queue i
// by writing i to its device's QueueNotify register. As an MMIO write
// that is an exit from KVM_RUN to the vCPU's goroutine and back; with
// KVM_IOEVENTFD the kernel completes the write itself and signals an
// eventfd, one per queue (the register's address and the value i), and a
// notifier goroutine waiting on it hands the kick to the transport
// (virtio.MMIO.Kick), which treats it as the write: nowhere before
// DRIVER_OK, deferred while the machine is paused.
//
// The eventfds are host resources, not state: a restored machine (or a
// fork) binds its own when its devices are rebuilt, and a kick signalled
// but not yet delivered when a checkpoint was taken is not lost, because
// virtio.RestoreMMIO notifies every ready queue of an active device.
// Without KVM_CAP_IOEVENTFD, or for a queue whose eventfd KVM refused,
// the write exits as before and reaches the register.

// kickSource is what a notifier waits on: a *kvm.IOEventFD.
type kickSource interface {
	// Wait returns once the guest kicked at least once since it last
	// returned, kvm.ErrIOEventFDClosed once closed.
	Wait() error
	Close() error
}

var _ kickSource = (*kvm.IOEventFD)(nil)

// notifiers are the goroutines that deliver caught kicks, one per
// kickSource. start is called while the machine is built, close by
// Machine.Close.
type notifiers struct {
	sources []kickSource
	wg      sync.WaitGroup
}

// start runs a goroutine that calls kick each time src reports kicks,
// until src is closed. Any other error of src ends it and is given to
// failed: the kicks it would have delivered are lost, and the guest's
// device with them.
func (n *notifiers) start(src kickSource, kick func(), failed func(error)) {
	n.sources = append(n.sources, src)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		for {
			err := src.Wait()
			if errors.Is(err, kvm.ErrIOEventFDClosed) {
				return
			}
			if err != nil {
				failed(err)
				return
			}
			kick()
		}
	}()
}

// close closes every source and waits until no goroutine delivers kicks.
func (n *notifiers) close() error {
	var errs []error
	for _, s := range n.sources {
		errs = append(errs, s.Close())
	}
	n.wg.Wait()
	n.sources = nil
	return errors.Join(errs...)
}

// notifyWriteSize is the width of a driver's QueueNotify write: the
// registers are 32 bits wide (virtio spec §4.2.2).
const notifyWriteSize = 4

// catchQueueNotifies binds every virtio device's QueueNotify register to
// an eventfd per queue and starts its notifier, if KVM offers ioeventfds.
// The devices are placed (m.slots).
func (m *Machine) catchQueueNotifies() {
	if !m.ioeventfds {
		return
	}
	for i, s := range m.slots {
		if s.transport == nil {
			continue
		}
		t := s.transport
		for q := range t.Queues() {
			f, err := m.vm.NewMMIOEventFD(s.base+virtio.QueueNotifyOffset, notifyWriteSize, uint64(q))
			if err != nil {
				deviceLogger(m.cfg).Warn("queue notifications: this queue's kicks exit to the VMM", "slot", i, "kind", s.kind, "queue", q, "err", err)
				continue
			}
			m.notifiers.start(f, func() { t.Kick(q) }, func(err error) {
				m.stop(ExitStopped, fmt.Errorf("mmio device %d (%s) queue %d notifications: %w", i, s.kind, q, err))
			})
		}
	}
}

// QueueNotifyCounts counts the guest's queue notifications (kicks) to
// the machine's virtio devices by the way they came.
type QueueNotifyCounts struct {
	// Exits are QueueNotify writes that left KVM_RUN and went through a
	// vCPU's exit handler.
	Exits uint64
	// Caught are writes KVM completed itself, signalling an eventfd.
	Caught uint64
}

// QueueNotifies returns the machine's counts of queue notifications.
func (m *Machine) QueueNotifies() QueueNotifyCounts {
	var c QueueNotifyCounts
	for _, s := range m.slots {
		if s.transport == nil {
			continue
		}
		k := s.transport.KickCounts()
		c.Exits += k.Register
		c.Caught += k.Caught
	}
	return c
}
