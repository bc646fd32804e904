"""Tasks: one module per task slug, each with its request/response schemas and logic.

Runtimes (the gateway, Modal apps, RunPod handlers) call these and add nothing but
transport.
"""
