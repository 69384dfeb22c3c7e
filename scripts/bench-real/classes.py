class Vec:
    __slots__ = ("x", "y")
    def __init__(self, x, y):
        self.x, self.y = x, y
    def add(self, other):
        return Vec(self.x + other.x, self.y + other.y)
    def scale(self, k):
        return Vec(self.x * k, self.y * k)
acc = Vec(0, 0)
for i in range(30000):
    acc = acc.add(Vec(i, -i).scale(2))
print(acc.x, acc.y)
