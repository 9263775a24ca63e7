"""An app with every model and body kind, for the AsyncAPI document tests.

Nested, recursive and generic models, validation constraints, a discriminated union, a
dataclass, two models of one name, a type without a JSON Schema, patterns (plain and with
character classes), sharded channels, a group-less stream, names AsyncAPI cannot take as they
are, and text no YAML reader may misread.
"""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from aioredq import App, Message

app = App("redis://reader:s3cret-pw@redis.example.com:6380/3")


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str = Field(min_length=1, max_length=200)
    postcode: str = Field(pattern=r"^[0-9]{5}$")


class Item(BaseModel):
    sku: str
    quantity: int = Field(gt=0, le=1000)
    price: float = Field(ge=0, multiple_of=0.01)


class Order(BaseModel):
    """An order placed by a customer."""

    id: int
    items: list[Item] = Field(min_length=1)
    ship_to: Address
    bill_to: Address | None = None
    colour: Colour = Colour.RED
    note: str = Field("", description='prix en € ✓: "no" #1\nsecond line - yes')
    placed_at: datetime
    tags: dict[str, int] = {}


class Legacy:
    """A namespace holding a second model named ``Item``."""

    class Item(BaseModel):
        code: int


class Card(BaseModel):
    kind: Literal["card"]
    last4: str = Field(min_length=4, max_length=4)


class Transfer(BaseModel):
    kind: Literal["transfer"]
    iban: str


class Payment(BaseModel):
    method: Annotated[Card | Transfer, Field(discriminator="kind")]
    amount: float = Field(gt=0)


@dataclasses.dataclass
class Ping:
    host: str
    port: int = 6379


class Tree(BaseModel):
    """A recursive model."""

    name: str
    children: list[Tree] = []


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None = None


class Opaque:
    """A body type with a custom validator and no JSON Schema."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(lambda value: value)


@app.task("orders", concurrency=4, max_attempts=3)
async def place_order(order: Order, message: Message) -> None:
    """Place an order.

    Charges the card, then books the delivery.
    """


@app.task("{tenant}jobs", lease=5)
async def tenant_job(text: str) -> None:
    """Hash-tagged queue with a text body."""


@app.task("jobs/v1:high")
async def raw_job(data: bytes) -> None:
    pass


@app.task("legacy")
async def legacy(item: Legacy.Item) -> None:
    pass


@app.task("items")
async def item(item: Item) -> None:
    pass


@app.stream("payments", group="billing", max_deliveries=2, maxlen=10_000)
async def pay(payment: Payment) -> None:
    """Settle a payment."""


@app.stream("payments", group="audit")
async def audit(entry: dict[str, str]) -> None:
    pass


@app.stream("clicks", start="earliest")
async def clicks(entry):  # type: ignore[no-untyped-def]  # no annotation: the body is Any
    pass


@app.stream("pings")
async def ping(body: Ping) -> None:
    pass


@app.subscribe("numbers", "more-numbers")
async def numbers(values: list[int]) -> None:
    """Sums of numbers on two channels."""


@app.subscribe(pattern="orders.*.created")
async def order_events(event: dict[str, Any]) -> None:
    pass


@app.subscribe(pattern="log.?[ab]")
async def logs(line: str) -> None:
    pass


@app.subscribe("positions", sharded=True)
async def positions(position: tuple[float, float]) -> None:
    pass


@app.subscribe("numbers")
async def anything(body: Any) -> None:
    pass


@app.task("trees")
async def tree(tree: Tree) -> None:
    pass


@app.task("pages")
async def page(page: Page[Item]) -> None:
    pass


@app.task("opaque")
async def opaque(body: Opaque) -> None:
    pass
