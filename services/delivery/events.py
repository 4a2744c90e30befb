"""What delivery handles: nothing yet. Until it does, its inbox queue keeps the events it will need."""
from shared.inbox import Handlers

handlers = Handlers()
