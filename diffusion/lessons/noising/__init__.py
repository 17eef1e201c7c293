"""Lesson 2: forward noising, q(x_t | x_0) step by step and in closed form."""
