"""Redis key names: the one place they are spelled (docs/OPERATIONS.md lists them).

Keys of one customer share the hash tag ``{<id>}`` so they live in one slot.

>>> customer_key("c42"), segments_key("c42"), member_set("lifecycle", "at_risk")
('cust:{c42}', 'cust:{c42}:seg', 'seg:lifecycle:at_risk')
"""

PREFIX_CUSTOMER = "cust:"
WATERMARK = "segflow:watermark"
DEADLINES = "segflow:deadlines"  # the prefix of the per-partition sets (and the single set of older versions)
OUTBOX = "segflow:outbox"
FLOWS = "segflow:flows"
SIZES_HISTORY = "segflow:sizes"
STATS = "segflow:stats"
MODEL = "segflow:model:behaviour"
CHURN_MODEL = "segflow:model:churn"  # JSON: the churn model's parameters, version and horizon
DRIFT = "segflow:drift"
RESEED = "segflow:reseed"
CUSTOMERS = "segflow:customers"  # count of customers with state (the max_customers limit)


def customer_key(customer_id: str) -> str:
    return f"{PREFIX_CUSTOMER}{{{customer_id}}}"


def segments_key(customer_id: str) -> str:
    return f"{customer_key(customer_id)}:seg"


def history_key(customer_id: str) -> str:
    return f"{customer_key(customer_id)}:hist"


def member_set(segmentation: str, segment: str) -> str:
    return f"seg:{segmentation}:{segment}"


def customer_id_of(key: str) -> str:
    """Inverse of :func:`customer_key` (also accepts the ``:seg``/``:hist`` keys)."""
    start, end = key.index("{"), key.rindex("}")
    return key[start + 1 : end]


def deadlines_key(partition: int) -> str:
    """The deadlines of the customers whose events go to input ``partition``: the worker
    that owns the partition re-evaluates them, so one worker decides for a customer.

    >>> deadlines_key(3)
    'segflow:deadlines:3'
    """
    return f"{DEADLINES}:{partition}"
