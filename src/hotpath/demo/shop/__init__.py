"""The reference shop backend of ``hotpath demo``: schema, data and (soon) the FastAPI app
run naive and optimized under load."""

from .data import SCALES, Scale, generate, load_shop
from .models import Base, Category, Order, OrderItem, Product, Review, User

__all__ = [
    "SCALES",
    "Base",
    "Category",
    "Order",
    "OrderItem",
    "Product",
    "Review",
    "Scale",
    "User",
    "generate",
    "load_shop",
]
