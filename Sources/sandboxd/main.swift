import BranchFS
print("sandboxd: not yet")
