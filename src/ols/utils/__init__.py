"""Small helpers with no maths in them."""
