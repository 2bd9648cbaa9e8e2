"""The table contracts of the design (DESIGN.md §4) that every reader produces."""
import pyarrow as pa

INTERACTION_FIELDS = ("user_id", "item_id", "timestamp")
INTERACTIONS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.float64())]
)
