"""Message header names: the contract between ingress, workers and ``botrelay dlq``."""

ATTEMPT = "x-botrelay-attempt"  # 1-based; raised on every retry, reset by replay
RECEIVED_AT = "x-botrelay-received-at"  # Unix ms, set once by the ingress
TRIGGER = "x-botrelay-trigger"
CONVERSATION = "x-botrelay-conversation"
# On dead letters:
ERROR = "x-botrelay-error"  # "ErrorClass: message", never secrets
ERROR_KIND = "x-botrelay-error-kind"  # "permanent" (user or input mistake) or "transient"
FAILED_AT = "x-botrelay-failed-at"  # Unix ms
QUEUE = "x-botrelay-queue"  # the queue the message was taken from when it failed
REPLAYED = "x-botrelay-replayed"  # set by `botrelay dlq replay`: Unix ms of the replay
# Replies the reply API accepted but the dedup store could not record (it was down): a retry
# carries the count and does not send those again.
REPLIED = "x-botrelay-replied"
