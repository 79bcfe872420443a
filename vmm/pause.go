package vmm

import (
	"errors"
	"fmt"

	"github.com/sailbox-dev/sailbox/vmm/kvm"
)

// ErrNotRunning reports a Pause, Resume or Checkpoint of a machine that is
// not in the state the call needs: not yet started by Run, already
// stopped, or (for Pause) already paused.
var ErrNotRunning = errors.New("machine not running")

// ErrVCPUStuck reports a pause (or checkpoint) that gave up on a vCPU
// that would not leave KVM_RUN: it is stuck in the host kernel.
var ErrVCPUStuck = errors.New("vCPU stuck in the host kernel")

// Pause stops the guest: every vCPU leaves KVM_RUN and parks on its
// thread, then the devices with goroutines of their own (disk requests in
// flight, vsock traffic from host sockets) finish what they were doing and
// stop touching guest memory. Until Resume, guest memory and the state of
// every vCPU and device stay still. Each vCPU's kvmclock is told it was
// paused (KVM_KVMCLOCK_CTRL), so the guest does not mistake the pause for
// a soft lockup. The guest's clock keeps running.
func (m *Machine) Pause() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if !m.running || m.paused {
		return fmt.Errorf("pause: %w", ErrNotRunning)
	}
	if err := m.pauseLocked(); err != nil {
		m.resumeLocked()
		return fmt.Errorf("pause: %w", err)
	}
	m.paused = true
	return nil
}

// Resume lets a paused guest run again.
func (m *Machine) Resume() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if !m.running || !m.paused {
		return fmt.Errorf("resume: %w", ErrNotRunning)
	}
	m.resumeLocked()
	m.paused = false
	return nil
}

// Paused reports whether the machine is paused.
func (m *Machine) Paused() bool {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	return m.paused
}

func (m *Machine) pauseLocked() error {
	for _, v := range m.vcpus {
		if err := v.requestPause(); err != nil {
			return err
		}
	}
	select {
	case <-m.exitCh:
		return ErrNotRunning
	default:
	}
	for _, v := range m.vcpus {
		if err := v.do(func(cpu *kvm.VCPU) error { return cpu.NotifyGuestPaused() }); err != nil {
			return err
		}
	}
	for i, s := range m.slots {
		if s.transport == nil {
			continue
		}
		if err := s.transport.Pause(); err != nil {
			return fmt.Errorf("mmio device %d (%s): %w", i, s.kind, err)
		}
	}
	return nil
}

// resumeLocked undoes pauseLocked, also a partial one: resuming a device
// or vCPU that is not paused does nothing.
func (m *Machine) resumeLocked() {
	for _, s := range m.slots {
		if s.transport != nil {
			s.transport.Resume()
		}
	}
	for _, v := range m.vcpus {
		v.resume()
	}
}
