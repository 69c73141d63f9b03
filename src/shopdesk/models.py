"""Every table, imported once so metadata is complete (migrations, tests)."""
from shopdesk.accounts import models as _accounts  # noqa: F401
from shopdesk.aftersales import models as _aftersales  # noqa: F401
from shopdesk.chat import models as _chat  # noqa: F401
from shopdesk.core import outbox as _outbox  # noqa: F401
from shopdesk.core import records as _records  # noqa: F401
from shopdesk.core.db import Base
from shopdesk.customers import models as _customers  # noqa: F401
from shopdesk.notifications import models as _notifications  # noqa: F401
from shopdesk.orders import models as _orders  # noqa: F401
from shopdesk.refunds import models as _refunds  # noqa: F401
from shopdesk.tickets import channel_models as _channels  # noqa: F401
from shopdesk.tickets import models as _tickets  # noqa: F401

metadata = Base.metadata
