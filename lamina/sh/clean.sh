# clean: SD — prepare the layer store and clear its staging area.
store
clean
df -Pk -- "$SD/staging"  # the controller reads its last line
