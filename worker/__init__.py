"""botrelay workers, and the API bot authors write against:

    from worker import Bot, Message, Reply, Retry, PermanentError
"""

from shared.errors import PermanentError, Retry
from shared.payloads import Message
from worker.bot import Bot
from worker.reply import Reply

__all__ = ["Bot", "Message", "PermanentError", "Reply", "Retry"]
