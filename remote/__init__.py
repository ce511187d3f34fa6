"""RunPod path: pod script rendering, registration and launch."""
