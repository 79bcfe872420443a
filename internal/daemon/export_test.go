package daemon

// LockCount is how many box locks the Manager holds in its map.
func (m *Manager) LockCount() int {
	n := 0
	m.locks.Range(func(any, any) bool { n++; return true })
	return n
}
