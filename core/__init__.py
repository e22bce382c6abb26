"""The application layer: what every entry path calls (intake, jobs, the lease queue, the sweep,
webhook relays, metrics, wake-ups). It imports db/ and the kernel in covidscan/, never an adapter
(api/, worker/, dicomnet/, cli/) and never TensorFlow."""
