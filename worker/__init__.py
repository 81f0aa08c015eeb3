"""botrelay workers, and the API bot authors write against:

    from botrelay.worker import Bot, Message, Reply, Retry, PermanentError
"""

from botrelay.shared.errors import PermanentError, Retry
from botrelay.shared.model import Message
from botrelay.worker.bot import Bot
from botrelay.worker.reply import Reply

__all__ = ["Bot", "Message", "PermanentError", "Reply", "Retry"]
